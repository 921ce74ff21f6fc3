"""The examples under each ``greencam`` command's ``--help`` (kept apart so that :mod:`.cli` stays about parsing)."""

from __future__ import annotations

START_EPILOG = """
Examples:

  greencam start --bbox 400,80,480,640            # webcam 0 -> virtual camera

  greencam start --auto --preview                  # find the face, show a preview window

  greencam start --source /dev/video2 --width 1280 --height 720 --fourcc MJPG --bbox 400,80,480,640

  greencam start --bbox 400,80,480,640 --sync on --max-delay 200   # every frame keyed with its own mask

  greencam start --audio-delay auto   # Linux: pick "greencam Microphone" in the call app; own masks, lips in sync

  greencam start --bbox 400,80,480,640 --idle never   # keep the webcam on while no app watches

  greencam start --source talk.mp4 --bbox 780,120,280,340 --output keyed.mp4 --background blur:30

  greencam start --source frames/ --point 640,360 --output out.mp4 --matte-output mattes/ --refine none

  greencam start --server https://gpu-box:8470 --token $TOKEN --bbox 400,80,480,640   # SAM 2 on another machine
"""

SERVE_EPILOG = """
Examples:

  greencam serve                                        # 127.0.0.1:8470, prints a new token

  greencam serve --host 0.0.0.0 --cert-file cert.pem --key-file key.pem --token-file token.txt

  greencam serve --model small --resolution 512 --max-sessions 8
"""

BENCH_EPILOG = """
Examples:

  greencam bench clip.mp4 --frames 30                          # tracker vs official predictor

  greencam bench --synthetic --random-weights --resolution 256  # no checkpoint, no video needed

  greencam bench clip.mp4 --e2e --frames 60                    # whole pipeline vs bare tracker

  greencam bench --compositor --frames 300                     # 1280x720 compositor only

  greencam bench clip.mp4 --live --seconds 20                  # real-time loop paced like a camera

  greencam bench clip.mp4 --soak --frames 3000                 # memory over a long run

  greencam bench davis/lucia/frames --oracle davis/lucia/masks --tracker-ms 250 --fps 24 --json

  greencam bench clip.mp4 --process --frames 40 --resolution 256  # whole processes vs the official script

  greencam bench clip.mp4 --serve --sessions 1 --sessions 4 --random-weights  # greencam serve, N clients

  greencam bench clip.mp4 --serve-step --sessions 4 --json      # one batched serve step vs one by one

  greencam bench --capacity --fps 30 --random-weights          # serve sessions one worker fits at 30 fps

  greencam bench --idle --random-weights --resolution 256 --seconds 10  # idle CPU, resume latency

  greencam bench --subjects 1 --subjects 2 --subjects 3 --frames 8     # cost per extra subject

  greencam bench --suite --device cuda --out bench-results     # everything make bench-gpu records
"""

CTL_EPILOG = (
    "Examples:\n\n  greencam ctl background blur:30\n\n  greencam ctl feather 4\n\n  greencam ctl reselect\n\n"
    "  greencam ctl pause   (and: greencam ctl resume)\n\n  greencam ctl status --json\n\n  greencam ctl quit\n\n"
    "Settings that can change mid-run: background, color, threshold, feather, grow, shrink, max-hole, min-island, "
    "refine, smooth, despill, mirror; any other needs a restart. The socket is owner-only, in $XDG_RUNTIME_DIR/greencam."
)
