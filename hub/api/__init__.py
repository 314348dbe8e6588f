"""The hub's REST API: thin routes over the hub's services (`hub.services.HubServices`), typed answers
(`hub.views.schemas`), errors as JSON in one place (`app`)."""
