"""`python -m stable_diffusion_api`: serve the app on DALI_HOST:DALI_PORT (127.0.0.1:8000)."""

from __future__ import annotations

import uvicorn

from stable_diffusion_api.config import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run("stable_diffusion_api.sd_api:app", host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
