"""Dali's web studio: a FastAPI service over the sd_core engine.

`stable_diffusion_api.sd_api:app` is the ASGI application; `create_app()` builds one from
`Settings`. The services in `stable_diffusion_api.services` (projects, the generation queue and
its workers, image storage, the model registry) are shared by every front end: the JSON API,
the Jinja pages, and later the AUTOMATIC1111 routes and the Gradio UI.
"""

__version__ = "0.1.0"
