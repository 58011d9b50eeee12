"""The HTTP service (import name ``ticketsolver_api``): a thin FastAPI shell over :mod:`ticketsolver.jobs`.

``ticketsolver_api.main.create_app(settings)`` builds the app; ``ticketsolver_api.server.run(...)`` serves
it (``ticketsolver serve``). Routes: ``POST /approximate``, ``GET /jobs``, ``GET /jobs/{id}``,
``GET /jobs/{id}/tickets[/{k}]``, ``GET /jobs/{id}/report``, ``DELETE /jobs/{id}``, ``GET /healthz``,
``GET /metrics``; OpenAPI at ``/docs``.
"""
