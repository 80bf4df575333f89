"""The service layer shared by every front end; `Studio` wires it together."""

from stable_diffusion_api.services.studio import Studio

__all__ = ["Studio"]
