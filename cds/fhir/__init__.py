"""FHIR out: ids, AI-result resources, the one results writer, posting to a server."""
