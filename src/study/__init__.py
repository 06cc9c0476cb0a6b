"""The loss study: identical networks trained with different classification losses."""
