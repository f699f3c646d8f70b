"""The DTD property-verification suite: strategies, checks, statistics, report."""
