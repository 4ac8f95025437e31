"""Infrastructure shared by the API and the workers: configuration, logging, cache."""
