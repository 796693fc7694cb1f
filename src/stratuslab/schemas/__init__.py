"""Wire types (pydantic), shared by the API and the client."""
