# Table B wall times as grouped bars, one group per workload.
# gnuplot -e "datafile='X.dat'; outfile='X.png'; titletext='...'" bench/plot.gp
# datafile: header line "workload" + one quoted label per column, then one
# row per workload (W1, W2, W3) of wall seconds (NaN = not measured).
if (!exists("titletext")) titletext = "zcow vs qemu-img"
set terminal pngcairo size 1200,650 font ",10" noenhanced
set output outfile
set title titletext
set style data histograms
set style histogram clustered gap 1.5
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "wall time, s (log scale)"
set logscale y
set yrange [0.1:*]
set grid ytics
set key below horizontal maxrows 2
set datafile missing "NaN"
set datafile separator "\t"
ncols = 8
plot for [c=2:ncols] datafile using c:xtic(1) title columnheader(c)
