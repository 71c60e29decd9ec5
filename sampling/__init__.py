"""Peer sampling services: which peer to gossip with next."""
