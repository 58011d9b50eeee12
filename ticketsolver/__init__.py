"""ticketsolver."""
