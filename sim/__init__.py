"""Simulation of many peers in one process, and the ``gossip-sim`` CLI."""
