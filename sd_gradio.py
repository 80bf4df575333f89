"""`python sd_gradio.py`: Dali's Gradio UI on http://127.0.0.1:7860 (the code is in
`dali_gradio/`; this launcher keeps the command and the names it always had).

    python sd_gradio.py                       # http://127.0.0.1:7860, offline, analytics off
    python sd_gradio.py --host 0.0.0.0 --port 7861 --project "My project"
"""

from __future__ import annotations

from dali_gradio import DaliUI, main, mount_gradio

__all__ = ["DaliUI", "main", "mount_gradio"]

if __name__ == "__main__":
    main()
