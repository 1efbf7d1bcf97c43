"""The neutral bottom layer every other folder may use: error types and exit codes, the CLI runner, atomic
writes, run folders, process-group helpers, image reading and normalisation, label conventions.

It imports nothing of the suite's own, so no folder above it can form a cycle through it (docs/architecture.md).
"""
