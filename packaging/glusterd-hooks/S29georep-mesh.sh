#!/bin/sh
# glusterd pre-hook of georep-mesh, installed as
#   /var/lib/glusterd/hooks/1/{stop,remove-brick,delete}/pre/S29georep-mesh.sh
# glusterd no longer knows geo-replication sessions (georepd does), so it cannot refuse
# to stop, shrink or delete a volume that a session runs on, as it used to. This asks
# the local georepd. glusterd 10.3 ignores a pre-hook's exit status: the operation goes
# ahead; the conflict is recorded as a GLUSTER_OP_WITH_GEOREP event (webhooks get it)
# and said on stderr (glusterd's log). The agent's socket: $GEOREP_SOCKET, else
# /run/georep/georepd.sock.
op=$(basename "$(dirname "$(dirname "$0")")")
exec georep gluster-hook "$op" "$@"
