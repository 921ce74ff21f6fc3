"""Live running: the pipeline loop (offline and live), idle while no app watches, the control socket, the
status line, the thread policy and the systemd service. Hands out Pipeline, the status line and the ctl server."""
