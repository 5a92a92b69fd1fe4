"""Pure pipeline stages: classify, enrich, degrade. No I/O, no clocks read inside."""
