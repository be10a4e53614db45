"""What the user asked for: the job config schema and the checks made before any actor starts."""
