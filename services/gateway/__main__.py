"""`python -m services.gateway`: the gateway, configured from `SPECSERVE_*` environment variables."""

from services.gateway.main import main

main()
