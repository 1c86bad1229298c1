"""Sans-I/O protocol core, scheme-neutral: the codec and its tag table, the stages, the runner.

Each scheme's messages and state machines live with the scheme (masking's in
``secagg.schemes.masking``).
"""
