"""The Phasegate approval service: people sign in at an identity provider, it signs proofs."""
