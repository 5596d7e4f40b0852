namespace Valley.Cli;

public static class Program
{
    public static Task<int> Main(string[] args) => ValleyCli.RunAsync(args);
}
