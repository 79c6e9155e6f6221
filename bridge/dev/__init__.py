"""Development harness: a throwaway Synapse and demo officials.

Imported only by `chatarchief demo`, the tests and the benchmarks; never by the bot itself.
"""
