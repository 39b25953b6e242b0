"""The Geo-R test suite (unit tests beside integration tests on real local servers)."""
