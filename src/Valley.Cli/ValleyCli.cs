using System.CommandLine;
using System.CommandLine.Parsing;
using Spectre.Console;
using Valley.Cli.Commands;
using Valley.Distributed;

namespace Valley.Cli;

/// <summary>
/// The <c>valley</c> command: argument parsing, progress and output around calls into the library.
/// Exit codes: 0 success, 1 bad input or options (one-line error), 3 interrupted, 70 internal error.
/// Under mpiexec every rank runs the same command; rank 0 prints. A failure all ranks agreed on (see
/// <see cref="ProcessGroups.Agree{T}"/>) ends every rank with the same exit code; a failure of one rank in the middle of the
/// computation, where the others wait for it at a collective, is printed by that rank and ends the whole job (MPI_Abort).
/// </summary>
public static class ValleyCli
{
    public const int ExitBadInput = 1;
    public const int ExitInterrupted = 3;
    public const int ExitInternal = 70;

    public static Command BuildRoot()
    {
        // A command named "valley" rather than a RootCommand, which takes its name from the assembly (Valley.Cli: the
        // assembly cannot be called valley.dll beside Valley.dll on case-insensitive file systems); help and version as
        // a RootCommand has them.
        var root = new Command("valley", "Valley: is your network in a sharp or a flat minimum? Hessian spectra, sharpness, loss landscapes, SAM training.")
        {
            new System.CommandLine.Help.HelpOption(), new VersionOption(),
        };
        root.Subcommands.Add(InfoCommand.Build());
        root.Subcommands.Add(EvalCommand.Build());
        root.Subcommands.Add(HessianCommand.Build());
        root.Subcommands.Add(TrainCommand.Build());
        root.Subcommands.Add(SharpnessCommand.Build());
        root.Subcommands.Add(LandscapeCommand.Build());
        root.Subcommands.Add(StudyCommand.Build());
        return root;
    }

    public static async Task<int> RunAsync(string[] args, TextWriter? stdout = null, TextWriter? stderr = null, IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        CommonOptions.Group = group;
        var rootError = stderr ?? Console.Error;
        if (!group.IsRoot()) { stdout = TextWriter.Null; stderr = TextWriter.Null; }
        var root = BuildRoot();
        var parse = root.Parse(args);
        // Ctrl-C and SIGTERM cancel the running command, which stops at its next check, keeps what it finished (results are
        // written as they come) and exits with code 3; System.CommandLine's own handler is off so that this is the only one.
        var config = new InvocationConfiguration
        {
            Output = stdout ?? Console.Out, Error = stderr ?? Console.Error, EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null,
        };
        using var cts = new CancellationTokenSource();
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, c => { c.Cancel = true; cts.Cancel(); });
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c => { c.Cancel = true; cts.Cancel(); });
        try
        {
            if (parse.Errors.Count > 0)
            {
                foreach (var e in parse.Errors.Take(1)) config.Error.WriteLine($"error: {string.Join(" ", e.Message.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))} (see 'valley {string.Join(' ', CommandPath(parse))} --help')");
                return ExitBadInput;
            }
            return await parse.InvokeAsync(config, cts.Token);
        }
        catch (Exception e)
        {
            bool verbose = args.Contains("--verbose");
            var inner = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerException! : e;
            // A bad argument the library refused, in the library's names: say it with the command's option names.
            if (inner is ArgumentException ae && OptionNames.Translate(ae, string.Join(' ', CommandPath(parse))) is { } message)
                inner = new ValleyException(message, ae);
            if (group.Size > 1 && inner is not AgreedFailure)
            {
                // Only this rank failed, the others wait for it at their next collective: say why and end the whole job.
                int code = inner switch { ValleyException => ExitBadInput, OperationCanceledException => ExitInterrupted, _ => ExitInternal };
                // Ctrl-C reaches every rank through mpiexec; each says so, since the first to abort ends the others.
                rootError.WriteLine(inner is OperationCanceledException ? $"interrupted (rank {group.Rank} of {group.Size}): finished results were kept"
                    : $"{(code == ExitBadInput ? "error" : "internal error")}: rank {group.Rank} of {group.Size}: {(code == ExitInternal ? inner.GetType().Name + ": " : "")}{inner.Message.Split('\n')[0]}");
                if (verbose) rootError.WriteLine(inner);
                rootError.Flush();
                group.Abort(code);
            }
            switch (inner)
            {
                case ValleyException ve:
                    config.Error.WriteLine($"error: {ve.Message}");
                    if (verbose) config.Error.WriteLine(ve);
                    return ExitBadInput;
                case OperationCanceledException:
                    config.Error.WriteLine("interrupted: finished results were kept");
                    return ExitInterrupted;
                default:
                    config.Error.WriteLine($"internal error: {inner.GetType().Name}: {inner.Message.Split('\n')[0]}");
                    if (verbose) config.Error.WriteLine(inner);
                    else config.Error.WriteLine("(run with --verbose for the stack trace)");
                    return ExitInternal;
            }
        }
    }

    static IEnumerable<string> CommandPath(ParseResult parse)
    {
        var names = new List<string>();
        for (SymbolResult? r = parse.CommandResult; r is CommandResult cr && cr.Parent is not null; r = cr.Parent) names.Insert(0, cr.Command.Name);
        return names;
    }
}
