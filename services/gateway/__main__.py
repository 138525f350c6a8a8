"""`python -m services.gateway`: the embedded gateway, configured from `SPECSERVE_*` environment variables."""

from services.gateway.embedded import main

main()
