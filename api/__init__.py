"""The HTTP service (import name ``ticketsolver_api``): a thin FastAPI shell over :mod:`ticketsolver.jobs`.

``ticketsolver_api.main.create_app(settings)`` builds the app; ``ticketsolver_api.server.run(...)`` serves
it (``ticketsolver serve``). JSON routes: ``POST /approximate``, ``GET /jobs``, ``GET /jobs/progress``,
``GET /jobs/{id}``, ``GET /jobs/{id}/tickets[/{k}]``, ``GET /jobs/{id}/tickets/{k}/report``,
``GET /jobs/{id}/tickets/{k}/export/{onnx|safetensors}``, ``GET /jobs/{id}/tickets/{k}/figures/*.svg``,
``GET /jobs/{id}/figures/sweep.svg``, ``GET /jobs/{id}/report``, ``DELETE /jobs/{id}[?purge=true]``,
``GET /healthz``, ``GET /metrics``. The web view (:mod:`ticketsolver_api.web`): ``GET /`` (jobs and the
submit form) and ``GET /ui/jobs/{id}`` (a job's layers, verification, figures and downloads). API docs at
``/docs`` and ``/redoc``, served offline.
"""
