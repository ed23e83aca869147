#!/bin/sh
# The image's command: serve $WAN_PROFILE (docker/README.md). The launcher resolves the profile, checks its memory
# plan against the free GPU memory, writes its repository and execs tritonserver in explicit model-control mode, by
# default under the stub supervisor (a crashed python stub's model is reloaded; WAN_SUPERVISE=0: plain tritonserver).
# Arguments go to tritonserver.
if [ "${WAN_SUPERVISE:-1}" = 1 ]; then
  server="python3 -m wan_distill.serving.supervisor -- tritonserver"
else
  server="tritonserver"
fi
exec python3 /opt/wan/scripts/triton_server.py --exec "$server" -- \
  --disable-auto-complete-config --exit-timeout-secs=30 "$@"
