"""Byzantine-robust merging: the outlier screen, robust rules over recent senders, attacks.

``rules``    pure aggregation functions with a batch dimension (clip, median, trimmed mean)
``window``   the latest value from each of the last few distinct senders
``screen``   the norm screen every received model passes first
``merger``   a peer's merge pipeline: merge-rule specs and the stateful per-peer merger
``attacks``  the poison an attacker peer gossips, to measure all of the above
"""
