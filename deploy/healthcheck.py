"""The container's health check: exit 0 when the service on this machine is ready (GET /readyz), else 1.

/readyz, not /healthz: a container whose model never loaded or warmed up must not count as healthy. It asks the
probe port (SERVICE_PROBE_PORT, which the image sets: answered by a thread of its own, whatever the clients do
to the service's port), or else the service's port with SERVICE_API_KEY when one is set (/readyz needs it there).
Standard library only, so that a probe every 30 s costs a bare interpreter's start-up, not the service's imports.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    probe_port = os.environ.get("SERVICE_PROBE_PORT")
    url = f"http://127.0.0.1:{probe_port or os.environ.get('SERVICE_PORT', '8000')}/readyz"
    key = None if probe_port else os.environ.get("SERVICE_API_KEY")
    request = urllib.request.Request(url, method="GET", headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
