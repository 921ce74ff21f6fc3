"""``greencam serve --ray``: the serve library's sessions on a Ray Serve cluster (docs/scaling.md).

Nothing here imports Ray at import time: :func:`~greenscreen_cam.cluster.host.run_cluster` does, and only ``serve --ray`` calls it.
:mod:`~greenscreen_cam.cluster.routing` holds the placement rules (plain functions),
:mod:`~greenscreen_cam.cluster.deploy` the Serve application, :mod:`~greenscreen_cam.cluster.host`
the process that starts or joins Ray, deploys, and cleans up.
"""
