"""Views of the ward for people: statistics of the store (``vitalmon stats``); trend
plots and the terminal central station are to come. They read the store or the MQTT
topics and never write: the daemon (sources -> engine -> sinks) does not depend on them."""
