"""resexp."""
