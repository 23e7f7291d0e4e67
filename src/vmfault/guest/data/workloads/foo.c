#include <stdio.h>
double mymulfunc(double data) { int i; double output = data;
  for (i = 0; i < 10; i++) output *= 1.1; return output; }
double myaddfunc(double data) { int i; double output = data;
  for (i = 0; i < 10; i++) output += 1.1; return output; }
int main(void) { double data = 1.0;
  data = mymulfunc(data); printf("fmul output : %.10f\n", data);
  data = myaddfunc(data); printf("fadd output : %.10f\n", data); return 0; }
