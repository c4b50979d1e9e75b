#!/bin/sh
# Image entrypoint: runs `python -m services.$SERVICE [serve|migrate]`.
#   SERVICE   identity | portals | invitations | mailer | gateway   (required)
#   $@        the service's command: serve (default, from the image's CMD) or migrate
# exec replaces the shell, so the service is PID 1 and receives SIGTERM directly
# (it drains in-flight requests for up to 20 s; give it a 30 s stop grace period).
set -eu

case "${SERVICE:-}" in
    identity|portals|invitations|mailer|gateway) ;;
    *)
        echo "clientpress: SERVICE='${SERVICE:-}' - set SERVICE to identity|portals|invitations|mailer|gateway" >&2
        exit 64
        ;;
esac

exec python -m "services.${SERVICE:?set SERVICE to identity|portals|invitations|mailer|gateway}" "$@"
