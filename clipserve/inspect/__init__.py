"""Inspection: pictures of what a plan samples (contact sheets), for people, not trainers.

- :mod:`.render`: ``render_contact_sheet(plan, clips)`` and ``encode_png``.
- :mod:`.sheet`: ``contact_sheet_png(path, plan)``: decode with the PyAV executor, draw, encode;
  the service runs it in its contact-sheet processes for ``/v1/videos/{index}/clips.png``.
"""
