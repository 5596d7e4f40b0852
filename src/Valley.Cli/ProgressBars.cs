using Spectre.Console;
using Valley.Curvature.Spectrum;

namespace Valley.Cli;

/// <summary>One bar of a progress display: the stage it belongs to, what it says, and how far it is.</summary>
public readonly record struct Bar(string Stage, string Description, double Value, double Max);

/// <summary>
/// Spectre progress bars driven by the library's progress reports: one bar per stage (an estimator, an epoch, a measure),
/// the previous one completed when a new stage begins. Nothing is drawn where no terminal shows it (or with --format json).
/// </summary>
public static class ProgressBars
{
    /// <summary>
    /// Runs <paramref name="work"/> with a progress sink; <paramref name="view"/> says what each report shows. With
    /// <paramref name="spinner"/> each stage shows a spinner and its elapsed time instead of a bar, for work whose
    /// length is not known in advance (a sharpness measure's ascent stops on its own tolerance).
    /// </summary>
    public static void Run<T>(IAnsiConsole term, bool show, Func<T, Bar> view, Action<IProgress<T>> work, bool spinner = false)
    {
        if (!show)
        {
            work(new SyncProgress<T>(_ => { }));
            return;
        }
        term.Progress()
            .AutoClear(false)
            .Columns(spinner ? [new TaskDescriptionColumn(), new SpinnerColumn(), new ElapsedTimeColumn()]
                             : [new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn()])
            .Start(ctx =>
            {
                ProgressTask? current = null;
                string? stage = null;
                void Finish()
                {
                    if (current is null) return;
                    current.Value = current.MaxValue;
                    current.StopTask();
                }
                work(new SyncProgress<T>(report =>
                {
                    var bar = view(report);
                    if (bar.Stage != stage)
                    {
                        Finish();
                        stage = bar.Stage;
                        current = ctx.AddTask(Markup.Escape(bar.Description), maxValue: Math.Max(1e-9, bar.Max));
                    }
                    current!.MaxValue = Math.Max(1e-9, bar.Max);
                    current.Value = Math.Min(bar.Value, current.MaxValue);
                    current.Description = Markup.Escape(bar.Description);
                }));
                Finish();
            });
    }

    /// <summary>The estimators' reports: a bar per estimator, products against the budget.</summary>
    public static void Run(IAnsiConsole term, Action<IProgress<EstimatorProgress>> work) =>
        Run(term, Commands.CommonOptions.ShowProgress(json: false), (EstimatorProgress p) => new Bar(p.Stage,
            $"{p.Stage}: {p.Products} products" + (p.Residual is { } r ? $", residual {r:0.0e+0}" : ""), Math.Min(p.Products, p.MaxProducts), Math.Max(1, p.MaxProducts)), work);
}
