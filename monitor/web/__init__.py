"""The web central station (``vitalmon web``): a browser view of the ward for nurses and
charge nurses, with logins and roles.

* :mod:`~monitor.web.server`: the process (uvicorn, one TaskGroup, signals set an event);
* :mod:`~monitor.web.app`: the ASGI app: pages, the live stream (SSE), the JSON API;
* :mod:`~monitor.web.live`: the ward from the daemon's MQTT topics and the store;
  commands to the daemon as the logged-in user;
* :mod:`~monitor.web.users`, :mod:`~monitor.web.sessions`: users (Argon2id), roles,
  sessions, CSRF, login throttling;
* :mod:`~monitor.web.data`: the bed page's plots as JSON (the facts of ``vitalmon report``);
* ``static/``, ``templates/``: every asset the pages use, shipped in the wheel.
"""
