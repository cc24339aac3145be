"""Model zoo: encoders, heads, recurrent decoders and the registry."""
