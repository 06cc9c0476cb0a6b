"""The one vocabulary of verdicts on the source text's claims, written by the probe stage (closed-form checks) and
by claims (checks measured in training), counted by the report. Imports nothing."""

HOLDS = "holds"
NUANCE = "holds with a nuance"
FAILS = "does not hold here"
UNSETTLED = "not established here"
VERDICTS = (HOLDS, NUANCE, FAILS, UNSETTLED)
