"""The .dcnn file: header checks, reader, writer and the atomic replace they share."""
