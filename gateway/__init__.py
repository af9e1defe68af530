"""The REST gateway: public REST+JSON translated to the services' gRPC APIs."""
