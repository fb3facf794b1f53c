"""Cost models: what an iteration of a method costs, from measured or roofline step times."""
