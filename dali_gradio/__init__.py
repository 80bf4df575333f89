"""Dali's Gradio UI, a package of its own above the service (`stable_diffusion_api` never
imports it). `python sd_gradio.py` serves it alone; `dali_app` mounts it inside the web app.
"""
