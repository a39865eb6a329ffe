"""Views of the ward for people: statistics of the store (``vitalmon stats``), trend
plots (``vitalmon report``) and the terminal central station (``vitalmon watch``, on the
MQTT topics). They read the store or the topics and never write to them (``watch`` only
publishes the operator's commands): the daemon (sources -> engine -> sinks) does not
depend on them."""
