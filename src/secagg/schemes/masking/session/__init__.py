"""Sessions that span rounds (docs/SESSIONS.md): the cohort is set up once, then every round
costs each client two messages (three in active mode).

``terms`` fixes what a session is (the set-up's round configuration and its caps),
``derivations`` every key and digest client and server must compute alike, ``messages`` the
wire messages, ``client`` and ``server`` the two sans-I/O state machines, and ``local`` runs a
whole session in one process (the simulator's and the tests' driver).
"""
