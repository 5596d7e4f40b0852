using Spectre.Console;
using Valley.Curvature.Spectrum;

namespace Valley.Cli;

/// <summary>Spectre progress bars driven by the library's <see cref="EstimatorProgress"/> reports: one bar per stage.</summary>
public static class ProgressBars
{
    public static void Run(IAnsiConsole term, Action<IProgress<EstimatorProgress>> work)
    {
        if (!Commands.CommonOptions.ShowProgress(json: false))
        {
            work(new SyncProgress<EstimatorProgress>(_ => { }));
            return;
        }
        term.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                ProgressTask? current = null;
                string? stage = null;
                work(new SyncProgress<EstimatorProgress>(p =>
                {
                    if (p.Stage != stage)
                    {
                        if (current is not null) { current.Value = current.MaxValue; current.StopTask(); }
                        stage = p.Stage;
                        current = ctx.AddTask(Markup.Escape(p.Stage), maxValue: Math.Max(1, p.MaxProducts));
                    }
                    current!.Value = Math.Min(p.Products, p.MaxProducts);
                    current.Description = Markup.Escape($"{p.Stage}: {p.Products} products" + (p.Residual is { } r ? $", residual {r:0.0e+0}" : ""));
                }));
                if (current is not null) { current.Value = current.MaxValue; current.StopTask(); }
            });
    }
}
