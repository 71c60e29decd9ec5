"""The learning core of gossip learning, free of network I/O.

Model state with an age, merge rules, the wire codec, the learner, datasets, partitioners
and models. Nothing here opens a socket or reads the wall clock; randomness is passed in as
explicit seeded generators, so the same code runs in the simulator and in a real node.
"""

__version__ = "0.1.0"
