"""Preference data: the record schema, source converters, cleaning and the synthetic generator."""
