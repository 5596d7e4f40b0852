global using Valley.Distributed;
