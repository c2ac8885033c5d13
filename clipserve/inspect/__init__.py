"""Inspection: pictures of what a plan samples (contact sheets), for people, not trainers.

- :mod:`.render`: ``render_contact_sheet(plan, clips)`` and ``encode_png``; the REST control
  plane serves them at ``/v1/videos/{index}/clips.png``.
"""
