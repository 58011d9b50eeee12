"""The web view: HTML shells, one JavaScript file and a style sheet, served by the API process itself.

Place in the service: beside the JSON routes, and below them in trust: the pages (``GET /``, the jobs table
and submit form; ``GET /ui/jobs/{id}``, one job) and the assets under ``/ui/static/`` hold no job data and
answer without a token; ``static/app.js`` fetches everything from the JSON API with the token. Figures are
drawn server-side (:mod:`.plots`, from the numbers of :mod:`.measures`) by ``ticketsolver_api.routes.figures``.
Nothing is fetched from another host and nothing is built: the files here are what the browser gets.
"""

from __future__ import annotations

from .pages import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
